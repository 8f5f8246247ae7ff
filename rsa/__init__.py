"""rsa-rl: recursive self-aggregation (RSA) of language-model reasoning and aggregation-aware RL.

Note: the import name `rsa` is shared with the unrelated PyPI package python-rsa (cryptography);
none of this project's dependencies need it. Do not install both in one environment.
"""

__version__ = "0.1.0"
DISTRIBUTION = "rsa-rl"
