"""Reading captures, rebuilding sessions, checking them, drawing and reporting."""
