"""The whole curriculum on CPU in about a minute, on tiny inputs of the real formats: the demo
(dev/demo.py), at the root where `docker exec kafka python demo.py` finds it. On a fresh clone,
`./dev/run demo` sets up the environment first."""
from dev.demo import main

if __name__ == "__main__":
    main()
