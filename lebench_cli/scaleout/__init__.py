"""Running the parts of one extraction on many processes, nodes or schedulers: each part is
one `extract --shard K/N` run into the same output folder (one writer per part, resume).

- environment: which part this process is, from SLURM's or torchrun's variables;
- slurm_script: an sbatch script running an array of parts, requeued at time limits;
- ray_parts: the parts as Ray tasks, retried when a worker dies.
"""
