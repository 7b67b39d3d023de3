"""Figures of an evaluation run and how sure they are: the bottom layer every report builds on."""
