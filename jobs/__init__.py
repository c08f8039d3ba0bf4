"""`ray job submit` entry points: batch renders of a sweep through the farm."""
