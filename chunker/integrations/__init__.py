"""Edges to other frameworks (Ray Data, Unsloth, TRL). Nothing in the core imports these modules."""
