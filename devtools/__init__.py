"""Development tools that are not part of the installed package: throw-away Redis
servers (`devserver`, used by the tests, the demo and the benchmarks) and `make demo`."""
