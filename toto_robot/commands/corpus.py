"""``toto-corpus``: render a diverse robosuite pretraining corpus (tasks x behaviours x randomized looks).

    toto-corpus                                    # 4 episodes each of Lift, Stack, Door -> outputs/corpus/robosuite.zarr
    toto-corpus episodes_per_task=500 image_size=128 output=outputs/corpus/robosuite128.zarr
    toto-corpus tasks=[Lift,Door] holdout_tasks=[] behaviours.expert=0 behaviours.noisy_expert=0.5 \
        behaviours.waypoints=0.5

Options live in configs/corpus.yaml (hydra overrides); envs/corpus.py says what the store holds. Re-running
with the same output resumes: episodes are appended until every task has episodes_per_task.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from envs.corpus import CorpusConfig, CorpusRun, build_corpus
from toto_robot.commands.entry import entry_point


def run(cfg: DictConfig) -> CorpusRun:
    node = OmegaConf.to_container(cfg, resolve=True)
    output, progress = node.pop("output"), node.pop("progress")
    config = CorpusConfig(**node)
    result = build_corpus(output, config, progress=progress)
    store = result.store
    print(f"wrote {result.episodes} episodes ({result.steps} steps, {result.frames_per_second:.1f} frames/s); "
          f"{store.path} holds {store.n_episodes} episodes ({store.n_steps} steps) of "
          f"{', '.join(config.corpus_tasks)}; held out: {', '.join(config.holdout_tasks) or 'none'}")
    return result


main = entry_point("corpus", "corpus", run)


if __name__ == "__main__":
    main()
