"""Probes: how much a frozen encoder's features hold, task by task and layer by layer.

features.py  every layer in one pass (`all_layer_features`), the sources probed (a Toto encoder, raw pixels)
             and an on-disk cache of their features keyed by the weights, the layers and the data
heads.py     what reads the features: an attentive probe, a linear probe on mean-pooled tokens, k-NN
data.py      labelled clips (images are one-frame clips) and the class-folder layout
image.py     image classification: an ImageFolder-style directory, or scikit-learn's bundled digits
video.py     video classification: class folders of videos or a CSV manifest, or generated moving shapes
tracking.py  DAVIS-style label propagation (J, F, J&F): the DAVIS-2017 layout, or generated videos
sweep.py     every layer x every head x every source, the plots by relative depth and the summary
The command is `toto-probe` (toto_robot/commands/probe.py).
"""
