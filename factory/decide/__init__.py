"""Decisions: what reads the stages' results and chooses. The candidate listing and its admission
(:mod:`~factory.decide.listing`), the student search's ranking (:mod:`~factory.decide.search`), the ship rule
(:mod:`~factory.decide.ship`) and the paired statistics every decision shares, INT8 acceptance included
(:mod:`~factory.decide.noise`). A stage computes and is cached; a decision only reads results; the report only
renders them.
"""

CHANGES_NO_RESULT = True
