"""The round loop: synchronous rounds and the asynchronous event loop, selection, rate
assignment, deadlines, clocks, the cost model and callbacks. Takes objects; knows no Ray."""
