"""Meta-architectures, heads and losses. Importing this module registers them with Detectron2."""
