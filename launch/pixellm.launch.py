"""The pixellm node with its parameter YAML.

    ros2 launch pixellm_ros pixellm.launch.py image:=/camera/color/image_raw model_path:=/models/pixellm-7b

Arguments: params_file (default share/pixellm_ros/config/pixellm.yaml), model_path (empty = the YAML's),
max_new_tokens (empty = the YAML's), image (topic the node's `image` input is remapped to), namespace,
autostart (configure + activate the lifecycle node on start; false = wait for `ros2 lifecycle set`).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {"autostart": arg("autostart").strip().lower() in ("true", "1", "yes")}
    if arg("model_path"):
        overrides["model_path"] = arg("model_path")
    if arg("max_new_tokens"):
        overrides["max_new_tokens"] = int(arg("max_new_tokens"))
    return [Node(package="pixellm_ros", executable="pixellm_node", name="pixellm", namespace=arg("namespace"),
                 parameters=[arg("params_file"), overrides], remappings=[("image", arg("image"))],
                 output="screen", emulate_tty=True)]


def generate_launch_description():
    share = get_package_share_directory("pixellm_ros")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "pixellm.yaml"),
                              description="node parameter YAML (/**: ros__parameters: layout)"),
        DeclareLaunchArgument("model_path", default_value="",
                              description="model folder (hf_model layout); empty = model_path of params_file"),
        DeclareLaunchArgument("max_new_tokens", default_value="",
                              description="longest answer in tokens; empty = max_new_tokens of params_file"),
        DeclareLaunchArgument("image", default_value="/camera/image_raw",
                              description="camera image topic (sensor_msgs/Image)"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="configure and activate the lifecycle node on start"),
        OpaqueFunction(function=_node),
    ])
