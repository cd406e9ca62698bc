"""What the tests share: stand-ins for Flower's pieces, harnesses for Flower runs and
loopback deployments, small populations, signed releases, release 0 and run configs of a
deployment, the measuring strategy, ``stamen`` command runs and the repository's paths
(``tests/conftest.py`` puts ``tests/`` on ``sys.path``; ``benchmarks/deployment.py`` does
the same for the loopback helpers)."""
