"""The chaos drill (``fulfil chaos``): the plan drawn from one seed, the Monkey (disruptions), the Traffic (orders),
and the drill that runs them and verifies its orders."""
