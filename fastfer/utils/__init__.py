"""Small pieces every layer may use (they import nothing else from fastfer): atomic file writes and the
typed errors the library raises."""
