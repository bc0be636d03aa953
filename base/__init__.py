"""What every part of quiver shares, importing nothing else of quiver's, so the snapshot format, the loader,
the server and distribution can use it without importing the CLI (quiver/) or each other.

    errors.py    the one error tree: one class per exit code, the exit-code table
    logs.py      logging set up in one place
    process.py   worker-process hygiene (die with the parent)
    args.py      flag value types shared by the commands
"""
