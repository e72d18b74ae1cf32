"""PixelLM for ROS 2: the model, an inference engine, and the ROS node around them.

Nothing is imported eagerly: `pixellm_ros.model` and `pixellm_ros.engine` work without ROS, and the
generated interfaces (`pixellm_ros.msg`, `.srv`, `.action`) are only needed by the node.
"""
# The generated interfaces are installed into site-packages/pixellm_ros by CMake, while the source tree's
# pixellm_ros/ may come first on sys.path (e.g. pytest from the repo root): merge both into one package.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
