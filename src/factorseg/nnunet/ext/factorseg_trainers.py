"""factorseg's nnU-Net trainers, for nnU-Net's external-trainer search (``nnUNet_extTrainer``)."""

from factorseg.nnunet.trainers import *  # noqa: F401,F403
