"""The demo: a real federation on the Wisconsin breast-cancer data set, run as separate processes."""
