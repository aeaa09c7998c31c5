"""Parameter sharing: k-means weight clustering, HashedNets and tied weights, for any model.

Level (a): :func:`init_centroids` and :func:`kmeans` cluster the weights of a layer (1-d
Lloyd iterations); :func:`hash_indices` is HashedNets' deterministic index and sign hash.

Level (b): :class:`SharedWeight` is a parametrization ``weight = codebook[codes]`` (pruned
entries stay zero), attached by :func:`apply_sharing` to the layers that ``layers`` selects
(:func:`nncompress.layers.select`) and baked into plain weights by
``nncompress.parametrizations.bake(model, kind=SharedWeight)``. Because the weight is an
indexing of the codebook, autograd gives each centroid the *sum* of its members' gradients,
which is exactly Deep Compression's centroid fine-tuning. :class:`HashedLinear` stores only its
buckets; :func:`tie_weights` makes layers share one weight Parameter.

The compressed file that stores shared models is :mod:`nncompress.fileformat`; equal-budget
networks for comparing sharing with other techniques are :mod:`nncompress.budget`.

References: han2016deep, gong2014compressing, chen2015compressing, lloyd1982least, lan2020albert
"""

from .clustering import INITS, SharedWeight, apply_sharing, apply_sharing_, init_centroids, kmeans, shared_layers
from .hashing import HashedLinear, hash_indices
from .tying import tie_weights, tie_weights_

__all__ = [
    "INITS", "init_centroids", "kmeans", "SharedWeight", "apply_sharing", "apply_sharing_", "shared_layers",
    "hash_indices", "HashedLinear", "tie_weights", "tie_weights_",
]
