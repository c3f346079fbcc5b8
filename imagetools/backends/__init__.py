"""Other programs that write into images, run as backends behind our own interface."""
