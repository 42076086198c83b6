"The p-diff pipeline on real checkpoints: the autoencoder reconstructs held-out checkpoints far below their spread, and a generated vector written into the frozen classifier is what the classifier then holds."
import torch
from diffusionblocks.data import load_images
from diffusionblocks.tasks.parameter_diffusion.pdiff import SmallCNN, norm_subset, subset_shapes, get_subset, set_subset, Standardizer, train_classifier, collect_checkpoints
from diffusionblocks.tasks.parameter_diffusion.models import ParamAutoencoder, train_autoencoder

torch.set_num_threads(1)


def test_autoencoder_reconstructs_held_out_checkpoints():
    tr = load_images('digits', 'train')
    torch.manual_seed(0)
    net = train_classifier(SmallCNN(1, 10, 8), tr, iterations=120, lr=3e-3, seed=0).cpu().eval()
    names = norm_subset(net, 2)
    P = collect_checkpoints(net, tr, names, K=60, iterations_between=2, lr=0.05, seed=0)['params']
    st = Standardizer.fit(P[:45], names, subset_shapes(net, names))
    Z = st.encode(P)
    ae = train_autoencoder(ParamAutoencoder(P.shape[1], 16), Z[:45], iterations=600, lr=2e-3, seed=0)
    with torch.no_grad(): rec = ae.decode(ae.encode(Z[45:]))
    err = (rec - Z[45:]).pow(2).mean().item()                              # held-out reconstruction error (standardised units)
    spread = (Z[45:] - Z[:45].mean(0)).pow(2).mean().item()                # distance of the held-out ones to the training mean
    print(f"held-out reconstruction error {err:.4f} vs spread {spread:.4f}")
    assert err < 0.1 * spread, (err, spread)
    v = st.decode(rec[:1])[0]
    set_subset(net, names, v)
    assert torch.equal(get_subset(net, names), v)
