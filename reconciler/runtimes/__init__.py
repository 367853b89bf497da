"""What builds and runs releases: the protocol (``base``), local processes (``process``, with
``systemd`` for transient units) and Docker (``docker``)."""
