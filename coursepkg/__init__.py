"""coursepkg: the companion package of the course "From EM to Diffusion".

Every algorithm the book shows lives here, once; the chapters, the solution notebooks and the
graders import the same functions. The package has three halves, visible from the names.

The chapters' mathematics, one module per idea (chapters 06-10 add theirs beside them):

- :mod:`coursepkg.probability` chapter 01: log-densities, KL divergences, Monte Carlo, Gaussian identities
- :mod:`coursepkg.gmm`         chapter 02: Gaussian mixtures, the E and M steps, EM (faster than scikit-learn)
- :mod:`coursepkg.chains`      chapter 02: a chain of latents (the diffusion forward process in miniature)
- :mod:`coursepkg.elbo`        chapter 03: ELBO and IWAE estimators, an exact linear-Gaussian model, amortized inference
- :mod:`coursepkg.estimators`  chapter 04: score-function and pathwise gradients, Gumbel-softmax, straight-through
- :mod:`coursepkg.vae`         chapter 05: the variational autoencoder (loss, sampling, importance-weighted log p(x))
- :mod:`coursepkg.diffusion`   chapters 08-09 (10 adds to it): the noise schedule, q(x_t | x_0), its posterior, the
  predictor conversions and their ELBO weights, the VE process; ``diffusion.loss``: the ELBO term by term and
  the simplified loss; ``diffusion.exact``: a Gaussian mixture diffused in closed form, its exact ELBO;
  ``diffusion.sampling``: the DDPM and DDIM samplers (one step interface), the sampling loop, Langevin

What the chapters share:

- :mod:`coursepkg.metrics`     sample quality: Chamfer (KAIST), MMD, energy distance, sliced Wasserstein,
  the Frechet distance in a digit classifier's features, precision and recall
- :mod:`coursepkg.models`      the models' one vocabulary (Protocols): log_likelihood(x) = log p(x), Sample(x, z)
- :mod:`coursepkg.config`      device, profile (quick/full), seeding, the notebook ``setup()`` line
- :mod:`coursepkg.nn`          the small networks (MLP, conv encoder and decoder, autoregressive decoder,
  the time-conditioned TimeMLP and UNet of the diffusion chapters)
- :mod:`coursepkg.plotting`    the figure style (sizes that fit the text column) and shared plots
- :mod:`coursepkg.train`       the one training loop: progress bar, history, checkpoint and exact resume
- :mod:`coursepkg.data`        the data sets: 2-D toys, digits, procedural shapes, MNIST files (download on request)
- :mod:`coursepkg._validate`   argument checking (one error policy, one ``seed=None`` rule)

The course's machinery:

- :mod:`coursepkg.grading`     ``check(exercise_id, answer)``; the check kit; one checks module per chapter
- :mod:`coursepkg.instructor`  the exercise generator, the batch grader, parallel chapter execution
  (``python -m coursepkg`` is their command line)
"""

__version__ = "0.1.0"
