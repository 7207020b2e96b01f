"""Real time: member events from input to Optimove's answer, and the dead letters of those
that could not be delivered."""
