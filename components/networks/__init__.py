"""The architectures: every method's nn.Module code, apart from its training maths in components/models.

One file per method's networks (`unet.py` is the baseline's, which CAFIN's stage 1 extends;
`patchgan.py` the discriminator three methods share), `blocks.py` the layers more than one of
them uses, `inputs.py` and `classical.py` what a network is fed (hole filling, bicubic),
`moving_average.py` the weight average StyleGAN2 and the training loop's EMA share, and
`stylegan2_convert.py` the official StyleGAN2 checkpoint layouts. Nothing here imports anything
of the project outside this package (docs/architecture.md, "Arrows"). Sources and departures:
docs/methods.md, each method's section.
"""
