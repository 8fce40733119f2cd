"""What runs inside Locust: the Predict users and their clients, the payloads they send, the HDR
recording and merge, the listener-owning plugin, and the live comparison tab of the web UI."""
