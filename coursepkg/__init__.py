"""coursepkg: the companion package of the course "From EM to Diffusion".

Every algorithm the book shows lives here, once; the chapters, the solution notebooks and the
graders import the same functions. Modules, one per idea:

- :mod:`coursepkg.config`      device, profile (quick/full), seeding, the notebook ``setup()`` line
- :mod:`coursepkg.models`      the models' one vocabulary (Protocols): log_likelihood(x) = log p(x), Sample(x, z)
- :mod:`coursepkg._validate`   argument checking shared by every module (one error policy, one ``seed=None`` rule)
- :mod:`coursepkg.probability` chapter 01: log-densities, KL divergences, Monte Carlo, Gaussian identities
- :mod:`coursepkg.gmm`         chapter 02: Gaussian mixtures, the E and M steps, EM (faster than scikit-learn)
- :mod:`coursepkg.elbo`        chapter 03: ELBO and IWAE estimators, an exact linear-Gaussian model, amortized inference
- :mod:`coursepkg.estimators`  chapter 04: score-function and pathwise gradients, Gumbel-softmax, straight-through
- :mod:`coursepkg.nn`          chapters 05-07: the small networks (MLP, conv encoder and decoder)
- :mod:`coursepkg.train`       the one training loop: progress bar, history, checkpoint and exact resume
- :mod:`coursepkg.vae`         chapter 05: the variational autoencoder (loss, sampling, importance-weighted log p(x))
- :mod:`coursepkg.data`        the data sets: 2-D toys, digits, procedural shapes, MNIST files (download on request)
- :mod:`coursepkg.grading`     ``check(exercise_id, answer)`` and the registry of exercise checks
- :mod:`coursepkg.notebooks`   the exercise generator and the notebook install cell
- :mod:`coursepkg.batch`       batch grading of a folder of submissions into a CSV
"""

__version__ = "0.1.0"
