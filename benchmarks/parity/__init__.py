"""Parity harness: cerp_jax's `:parity` preset against the authors' PyTorch code on one split.

Modules: ``export`` (a cerp_jax split written in the original's layout and derived files),
``original`` (a patched scratch copy of the authors' checkout, its commands and log parsers),
``table`` (rows, agreement test, CSV/Markdown/plot). ``run.py`` is the one command.
"""
