
CHANGES_NO_RESULT = True  # no stage result depends on this module (factory.identity)
