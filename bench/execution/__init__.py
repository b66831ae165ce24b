"""Where and how a grid's runs train: the executor settings, the in-process and process-pool
executors, SLURM and Ray, the grid's coordination and the cost estimate before it runs."""
