"""The folder to name in ``nnUNet_extTrainer``: nnU-Net imports each module here and looks for the trainer."""
