"""``python -m bandistill``: the command line, as torchrun launches it (``torchrun -m bandistill train ...``)."""

from bandistill.cli.main import main

main()
