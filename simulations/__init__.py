"""The harness that runs many sites on one machine (Flower's simulation engine) + scenarios."""
