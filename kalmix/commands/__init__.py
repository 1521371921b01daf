"""Sub-apps of the `kalmix` console script that join several packages."""
