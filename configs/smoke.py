"""A seconds-long smoke run for tests: tiny net, a slice of the data, one epoch.

Command:   python -m train --config configs/smoke.py --workdir /tmp/smoke
Runtime:   by machine kind, 2 CPU cores each:
           - AVX-512 (Intel Xeon), shared with other work (load averages 5-10): two whole runs took 51
             and 97 s wall, 28 and 33 CPU-seconds, so 15-33 s on an idle machine (1 or 2 busy cores).
           - XLA_FLAGS=--xla_cpu_max_isa=AVX2, same machine: the same, two whole runs of 65 and 42 s wall,
             36 and 30 CPU-seconds.
           - a real AVX2 machine (2-core AMD EPYC), idle: 28 s wall, 36 CPU-seconds (34 s before conv
             kernels were drawn as matrices, train/model.py: conv_kernel_init); about 1.2-1.5x that inside
             `make test`, where the other worker shares the cores.
Accuracy:  meaningless (>10% = it learns something).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.name = "smoke"
    config.model.widths = (8, 16)
    config.model.convs_per_block = 1
    config.model.dense = 32
    config.num_epochs = 1
    config.batch_size = 32
    config.eval_batch_size = 250
    config.validation_size = 0.1
    config.train_limit = 2048
    config.test_limit = 500
    return config
