"""What the daemon serves over HTTP: the listener, the exporter and the JSON API."""
