"""Demo: the pixellm node, a synthetic demo camera, the demo planner asking its questions, and rviz2.

    ros2 launch pixellm_ros demo.launch.py [model_path:=...] [rviz:=false]

rviz2 shows config/pixellm.rviz: the overlay, the label image, the first target's mask (target_1) and the points.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

IMAGE = "/camera/image_raw"


def generate_launch_description():
    share = get_package_share_directory("pixellm_ros")
    remap = [("image", IMAGE), ("camera_info", "/camera/camera_info")]
    return LaunchDescription([
        DeclareLaunchArgument("model_path", default_value="", description="model folder; empty = the YAML's"),
        DeclareLaunchArgument("rate_hz", default_value="5.0", description="demo camera frame rate"),
        DeclareLaunchArgument("out", default_value="demo_out", description="folder for the planner's overlays"),
        DeclareLaunchArgument("rviz", default_value="true", description="start rviz2"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(os.path.join(share, "launch", "pixellm.launch.py")),
            launch_arguments={"model_path": LaunchConfiguration("model_path"), "image": IMAGE,
                              "autostart": "true"}.items()),
        Node(package="pixellm_ros", executable="demo_camera", name="demo_camera", remappings=remap,
             parameters=[{"rate_hz": LaunchConfiguration("rate_hz")}], output="screen"),
        Node(package="pixellm_ros", executable="demo_planner", name="demo_planner", remappings=remap,
             arguments=["--out", LaunchConfiguration("out")], parameters=[{"service": "/pixellm/segment"}],
             output="screen"),
        Node(package="rviz2", executable="rviz2", name="rviz2",
             arguments=["-d", os.path.join(share, "config", "pixellm.rviz")],
             condition=IfCondition(LaunchConfiguration("rviz"))),
    ])
