"""`ssh.command` (issue 14 item 2): being built."""
