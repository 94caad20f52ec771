"""The progressive GAN: layers, networks, masks, losses and weight I/O."""
