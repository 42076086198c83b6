"Tests beside the masked-diffusion language model: its text sequences never cross a split. (The model's own tests — exact resume, checkpoints, the closed-form ELBO, configurations — are in nbs/19_mdm.ipynb.)"
import torch
from diffusionblocks.data import TextSequences


def test_sequences_stay_inside_their_split():
    ids = torch.arange(1000) % 27
    for stride in (None, 7, 64):
        s = TextSequences(ids, 64, stride)
        last = (len(s) - 1) * (stride or 64)
        assert last + 64 <= len(ids) and last + (stride or 64) + 64 > len(ids)
        assert torch.equal(s[len(s) - 1], ids[last:last + 64])
