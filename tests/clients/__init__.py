"""Real clients (the Node.js SDK, newman, curl) and the helpers the tests run them with."""
