"""The character world: procedural characters that speak, listen and idle, with known ground truth."""
