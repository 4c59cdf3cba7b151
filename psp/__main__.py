"""``python -m psp``: run the PSP simulator (see ``psp.app.main``)."""

from psp.app import main

if __name__ == "__main__":
    main()
