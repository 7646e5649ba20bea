import os
import sys

import torch

# Make ``import models`` work whatever pytest's import mode / rootdir.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The property tests build many tiny models; more threads only add overhead.
torch.set_num_threads(min(2, torch.get_num_threads()))
