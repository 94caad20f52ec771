"""The progressive GAN: layers, building-block networks, the architectures (one module each, registered by name in
`model.architectures`), masks, losses and weight I/O."""
