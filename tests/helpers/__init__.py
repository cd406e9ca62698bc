"""What the tests share: stand-ins for Flower's pieces, harnesses for Flower runs and
loopback deployments, small populations, signed releases and the repository's paths
(``tests/conftest.py`` puts ``tests/`` on ``sys.path``; ``benchmarks/deployment.py`` does
the same for the loopback helpers)."""
