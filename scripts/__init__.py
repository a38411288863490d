"""Entry points: the ``rlft`` command, dataset collection and benchmark drivers."""
