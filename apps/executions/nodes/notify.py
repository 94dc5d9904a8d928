"""`notify.email` and `notify.chat` (issue 14 item 3): being built."""
