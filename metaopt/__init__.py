"""metaopt: learned optimizers by guided policy search, shipped as optax transformations."""

__version__ = "0.1.0"
