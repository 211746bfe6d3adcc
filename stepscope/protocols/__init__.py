"""The protocols stepscope reads: one package each, made by one registered factory."""
