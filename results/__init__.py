"""Run results, their figures and comparisons: the bottom layer that train, server, streamer and bench share."""
